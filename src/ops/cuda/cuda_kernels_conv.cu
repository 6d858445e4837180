/* mobiletune's own CUDA kernels, convolutions other than depthwise (launchers in
 * cuda_kernels.h): the weight layout transforms around cuDNN, the direct convolution for any pads
 * (one output element per thread; backward data one input element per thread; the weight gradient
 * as per-slice partials then a fixed-order sum in double), and Conv1's weight gradient with every
 * tap in registers. Activations and their gradients in any storage (the template of
 * cuda_kernels_internal.cuh), weights and the weight gradient float. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "ops/cuda/cuda_kernels.h"
#include "ops/cuda/cuda_kernels_internal.cuh"

namespace {

/* ---- weight layouts ----------------------------------------------------------------------- */

__global__ void hwio_to_krsc_kernel(const float *src, float *dst, int rs, int cin, int cout) {
    const size_t count = (size_t)rs * cin * cout;
    GRID_STRIDE(j, count) {
        int ci = (int)(j % cin);
        size_t t = j / cin;
        int r = (int)(t % rs), k = (int)(t / rs);
        dst[j] = src[((size_t)r * cin + ci) * cout + k];
    }
}

__global__ void krsc_to_hwio_kernel(const float *src, float *dst, int rs, int cin, int cout) {
    const size_t count = (size_t)rs * cin * cout;
    GRID_STRIDE(j, count) {
        int co = (int)(j % cout);
        size_t t = j / cout;
        int ci = (int)(t % cin), r = (int)(t / cin);
        dst[j] = src[((size_t)co * rs + r) * cin + ci];
    }
}

/* ---- direct convolution ------------------------------------------------------------------- */

/* out[j] = sum over parts of partials[part][j], in double, in part order */
__global__ void sum_parts_kernel(const float *partials, int parts, size_t count, float *out) {
    GRID_STRIDE(j, count) {
        double s = 0.0;
        for (int p = 0; p < parts; p++)
            s += partials[(size_t)p * count + j];
        out[j] = (float)s;
    }
}

/* y: one thread per output element (n, oh, ow, co); w: HWIO */
template <class S>
__global__ void direct_forward_kernel(mt_cuda_conv_geom g, const typename S::elem *x,
                                      const float *w, typename S::elem *y) {
    const size_t count = (size_t)g.n * g.ho * g.wo * g.cout;
    GRID_STRIDE(i, count) {
        int co = (int)(i % g.cout);
        size_t t = i / g.cout;
        int ow = (int)(t % g.wo);
        t /= g.wo;
        int oh = (int)(t % g.ho), n = (int)(t / g.ho);
        float acc = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            int ih = oh * g.stride + kh - g.pad_top;
            if (ih < 0 || ih >= g.h) continue;
            for (int kw = 0; kw < g.k; kw++) {
                int iw = ow * g.stride + kw - g.pad_left;
                if (iw < 0 || iw >= g.w) continue;
                const typename S::elem *xp = x + (((size_t)n * g.h + ih) * g.w + iw) * g.cin;
                const float *wp = w + (size_t)(kh * g.k + kw) * g.cin * g.cout + co;
                for (int ci = 0; ci < g.cin; ci++)
                    acc += S::load(xp[ci]) * wp[(size_t)ci * g.cout];
            }
        }
        y[i] = S::store(acc);
    }
}

/* dx: one thread per input element (n, ih, iw, ci) */
template <class S>
__global__ void direct_backward_data_kernel(mt_cuda_conv_geom g, const typename S::elem *dy,
                                            const float *w, typename S::elem *dx) {
    const size_t count = (size_t)g.n * g.h * g.w * g.cin;
    GRID_STRIDE(i, count) {
        int ci = (int)(i % g.cin);
        size_t t = i / g.cin;
        int iw = (int)(t % g.w);
        t /= g.w;
        int ih = (int)(t % g.h), n = (int)(t / g.h);
        float acc = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            int oh = output_index(ih, g.pad_top, kh, g.stride, g.ho);
            if (oh < 0) continue;
            for (int kw = 0; kw < g.k; kw++) {
                int ow = output_index(iw, g.pad_left, kw, g.stride, g.wo);
                if (ow < 0) continue;
                const typename S::elem *dyp = dy + (((size_t)n * g.ho + oh) * g.wo + ow) * g.cout;
                const float *wp = w + ((size_t)(kh * g.k + kw) * g.cin + ci) * g.cout;
                for (int co = 0; co < g.cout; co++)
                    acc += S::load(dyp[co]) * wp[co];
            }
        }
        dx[i] = S::store(acc);
    }
}

/* Partial weight gradients: one thread per weight j = ((kh*k + kw)*cin + ci)*cout + co over this
 * block row's slice of positions. grid: (weights/256, parts); partials: [part][weights] */
template <class S>
__global__ void direct_backward_weights_kernel(mt_cuda_conv_geom g, const typename S::elem *x,
                                               const typename S::elem *dy, float *partials) {
    const size_t weights = (size_t)g.k * g.k * g.cin * g.cout;
    const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= weights) return;
    const int co = (int)(j % g.cout);
    const int ci = (int)((j / g.cout) % g.cin);
    const int tap = (int)(j / ((size_t)g.cout * g.cin));
    const int kh = tap / g.k, kw = tap % g.k;
    const long positions = (long)g.n * g.ho * g.wo;
    const long per = (positions + gridDim.y - 1) / gridDim.y;
    const long begin = (long)blockIdx.y * per;
    const long end = begin + per < positions ? begin + per : positions;
    float acc = 0.0f;
    for (long p = begin; p < end; p++) {
        int ow = (int)(p % g.wo);
        long t = p / g.wo;
        int oh = (int)(t % g.ho), n = (int)(t / g.ho);
        int ih = oh * g.stride + kh - g.pad_top, iw = ow * g.stride + kw - g.pad_left;
        if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
        acc += S::load(x[(((size_t)n * g.h + ih) * g.w + iw) * g.cin + ci]) *
               S::load(dy[(size_t)p * g.cout + co]);
    }
    partials[(size_t)blockIdx.y * weights + j] = acc;
}

/* Direct convolution's weight gradient for a small input depth (Conv1: 3x3 over RGB): the
 * K*K*CIN taps are compile-time, so a thread keeps all of them for V output channels in
 * registers (K*K*CIN*V sums) while it walks whole output rows (one division per row, the input
 * pixel's CIN values read once per tap for V channels). Block (lanes over groups of V output
 * channels, rows), grid (cols, parts); partials [part][K*K*CIN][Cout], rows of the block added in
 * a fixed order, parts by mt_cuda_launch_sum_parts in double. */
template <class S, int V, int K, int CIN>
__global__ void direct_backward_weights_rows_kernel(mt_cuda_conv_geom g, const typename S::elem *x,
                                                    const typename S::elem *dy, long rows_per_block,
                                                    float *partials) {
    const int KC = K * K * CIN, cout = g.cout;
    const int co0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    const bool active = co0 < cout;
    const long rows = (long)g.n * g.ho;
    const long begin = (long)blockIdx.y * rows_per_block;
    const long end = begin + rows_per_block < rows ? begin + rows_per_block : rows;
    float acc[K * K * CIN][V], dv[V];
    MT_UNROLL
    for (int j = 0; j < KC; j++)
        for (int v = 0; v < V; v++)
            acc[j][v] = 0.0f;
    if (active) {
        for (long r = begin + threadIdx.y; r < end; r += blockDim.y) {
            const int oh = (int)(r % g.ho), n = (int)(r / g.ho);
            const typename S::elem *dyrow = dy + (size_t)r * g.wo * cout + co0;
            const typename S::elem *image = x + (size_t)n * g.h * g.w * CIN;
            for (int ow = 0; ow < g.wo; ow++) {
                vec_io<S, V>::load(dyrow + (size_t)ow * cout, dv);
                MT_UNROLL
                for (int kh = 0; kh < K; kh++) {
                    const int ih = oh * g.stride + kh - g.pad_top;
                    if (ih < 0 || ih >= g.h) continue;
                    MT_UNROLL
                    for (int kw = 0; kw < K; kw++) {
                        const int iw = ow * g.stride + kw - g.pad_left;
                        if (iw < 0 || iw >= g.w) continue;
                        const typename S::elem *px = image + ((size_t)ih * g.w + iw) * CIN;
                        MT_UNROLL
                        for (int ci = 0; ci < CIN; ci++) {
                            const float xv = S::load(px[ci]);
                            for (int v = 0; v < V; v++)
                                acc[(kh * K + kw) * CIN + ci][v] =
                                    fmaf(xv, dv[v], acc[(kh * K + kw) * CIN + ci][v]);
                        }
                    }
                }
            }
        }
    }
    __shared__ float part[BN_THREADS * BN_MAX_V];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    MT_UNROLL
    for (int j = 0; j < KC; j++) {
        for (int v = 0; v < V; v++)
            part[t * V + v] = acc[j][v];
        __syncthreads();
        if (threadIdx.y == 0 && active)
            for (int v = 0; v < V; v++) {
                float s = 0.0f;
                for (unsigned y = 0; y < blockDim.y; y++)
                    s += part[(y * blockDim.x + threadIdx.x) * V + v];
                partials[((size_t)blockIdx.y * KC + j) * cout + co0 + v] = s;
            }
        __syncthreads();
    }
}

} // namespace

extern "C" {

int mt_cuda_reduce_parts(long rows) {
    long parts = (rows + 255) / 256;
    return parts < 1 ? 1 : parts > 256 ? 256 : (int)parts;
}

cudaError_t mt_cuda_launch_hwio_to_krsc(cudaStream_t stream, const float *src, float *dst, int rs,
                                        int cin, int cout) {
    hwio_to_krsc_kernel<<<grid_for((size_t)rs * cin * cout), THREADS, 0, stream>>>(src, dst, rs,
                                                                                   cin, cout);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_krsc_to_hwio(cudaStream_t stream, const float *src, float *dst, int rs,
                                        int cin, int cout) {
    krsc_to_hwio_kernel<<<grid_for((size_t)rs * cin * cout), THREADS, 0, stream>>>(src, dst, rs,
                                                                                   cin, cout);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_direct_conv_forward(cudaStream_t stream, mt_cuda_storage storage,
                                               const mt_cuda_conv_geom *g, const void *x,
                                               const float *w, void *y) {
    const size_t count = (size_t)g->n * g->ho * g->wo * g->cout;
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        direct_forward_kernel<S>
            <<<grid_for(count), THREADS, 0, stream>>>(*g, as_elem<S>(x), w, as_elem<S>(y));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_direct_conv_backward_data(cudaStream_t stream, mt_cuda_storage storage,
                                                     const mt_cuda_conv_geom *g, const void *dy,
                                                     const float *w, void *dx) {
    const size_t count = (size_t)g->n * g->h * g->w * g->cin;
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        direct_backward_data_kernel<S>
            <<<grid_for(count), THREADS, 0, stream>>>(*g, as_elem<S>(dy), w, as_elem<S>(dx));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_direct_conv_backward_weights(cudaStream_t stream,
                                                        mt_cuda_storage storage,
                                                        const mt_cuda_conv_geom *g, const void *x,
                                                        const void *dy, float *partials,
                                                        float *dw) {
    const size_t weights = (size_t)g->k * g->k * g->cin * g->cout;
    const int parts = mt_cuda_reduce_parts((long)g->n * g->ho * g->wo);
    const dim3 grid((unsigned)((weights + THREADS - 1) / THREADS), (unsigned)parts);
    cudaError_t e = with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        direct_backward_weights_kernel<S>
            <<<grid, THREADS, 0, stream>>>(*g, as_elem<S>(x), as_elem<S>(dy), partials);
        return cudaGetLastError();
    });
    if (e != cudaSuccess) return e;
    return mt_cuda_launch_sum_parts(stream, partials, parts, weights, dw);
}

int mt_cuda_direct_weights_rows_supported(const mt_cuda_conv_geom *g) {
    return g->k == 3 && g->cin == 3;
}

size_t mt_cuda_direct_weights_rows_partials(const mt_cuda_conv_geom *g) {
    const rows_plan a = rows_make_plan(g, g->cout, false);
    const rows_plan b = rows_make_plan(g, g->cout, true);
    const size_t parts = a.grid.y > b.grid.y ? a.grid.y : b.grid.y;
    return parts * g->k * g->k * g->cin * g->cout;
}

cudaError_t mt_cuda_launch_direct_conv_backward_weights_rows(cudaStream_t stream,
                                                             mt_cuda_storage storage,
                                                             const mt_cuda_conv_geom *g,
                                                             const void *x, const void *dy,
                                                             float *partials, float *dw) {
    if (!mt_cuda_direct_weights_rows_supported(g)) return cudaErrorInvalidValue;
    int parts = 1;
    cudaError_t e = with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        const rows_plan p = rows_make_plan(g, g->cout, vec_aligned<S>(dy));
        parts = (int)p.grid.y;
        auto kernel = p.vec == 4 ? direct_backward_weights_rows_kernel<S, 4, 3, 3>
                                 : direct_backward_weights_rows_kernel<S, 1, 3, 3>;
        kernel<<<p.grid, p.block, 0, stream>>>(*g, as_elem<S>(x), as_elem<S>(dy), p.rows_per_block,
                                               partials);
        return cudaGetLastError();
    });
    if (e != cudaSuccess) return e;
    return mt_cuda_launch_sum_parts(stream, partials, parts, (size_t)g->k * g->k * g->cin * g->cout,
                                    dw);
}

} // extern "C"

cudaError_t mt_cuda_launch_sum_parts(cudaStream_t stream, const float *partials, int parts,
                                     size_t count, float *out) {
    sum_parts_kernel<<<grid_for(count), THREADS, 0, stream>>>(partials, parts, count, out);
    return cudaGetLastError();
}
