/* mobiletune's own CUDA kernels, depthwise convolution (multiplier 1; launchers in
 * cuda_kernels.h): the register-blocked forward and backward data (a strip of positions and a
 * vector of channels per thread), the weight gradient walking whole output rows, and the first
 * one-output-per-thread kernels kept as MT_CUDA_DEPTHWISE_KERNEL=legacy. Activations and their
 * gradients in any storage (the template of cuda_kernels_internal.cuh), weights and the weight
 * gradient float. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "ops/cuda/cuda_kernels.h"
#include "ops/cuda/cuda_kernels_internal.cuh"

namespace {

/* ---- one output per thread (MT_CUDA_DEPTHWISE_KERNEL=legacy) ---- */

/* y: one thread per output element (n, oh, ow, c) */
template <class S>
__global__ void depthwise_forward_kernel(mt_cuda_conv_geom g, const typename S::elem *x,
                                         const float *w, typename S::elem *y) {
    const int C = g.cin;
    const size_t count = (size_t)g.n * g.ho * g.wo * C;
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        size_t t = i / C;
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
                acc += S::load(x[(((size_t)n * g.h + ih) * g.w + iw) * C + c]) *
                       w[(kh * g.k + kw) * C + c];
            }
        }
        y[i] = S::store(acc);
    }
}

/* dx: one thread per input element (n, ih, iw, c) */
template <class S>
__global__ void depthwise_backward_data_kernel(mt_cuda_conv_geom g, const typename S::elem *dy,
                                               const float *w, typename S::elem *dx) {
    const int C = g.cin;
    const size_t count = (size_t)g.n * g.h * g.w * C;
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        size_t t = i / C;
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
                acc += S::load(dy[(((size_t)n * g.ho + oh) * g.wo + ow) * C + c]) *
                       w[(kh * g.k + kw) * C + c];
            }
        }
        dx[i] = S::store(acc);
    }
}

/* Partial weight gradients of taps [tap0, tap0+taps) over this block's slice of the N*Ho*Wo
 * output positions. Block: 32 channels x 8 positions; grid: (C/32, parts).
 * partials: [part][k*k][C] */
template <class S>
__global__ void depthwise_backward_weights_kernel(mt_cuda_conv_geom g, const typename S::elem *x,
                                                  const typename S::elem *dy, int tap0, int taps,
                                                  float *partials) {
    const int C = g.cin, kk = g.k * g.k;
    const int c = blockIdx.x * RED_X + threadIdx.x;
    const long positions = (long)g.n * g.ho * g.wo;
    const long per = (positions + gridDim.y - 1) / gridDim.y;
    const long begin = (long)blockIdx.y * per;
    const long end = begin + per < positions ? begin + per : positions;
    float acc[MAX_TAPS];
    for (int t = 0; t < MAX_TAPS; t++)
        acc[t] = 0.0f;
    if (c < C) {
        for (long p = begin + threadIdx.y; p < end; p += RED_Y) {
            int ow = (int)(p % g.wo);
            long t = p / g.wo;
            int oh = (int)(t % g.ho), n = (int)(t / g.ho);
            float d = S::load(dy[(size_t)p * C + c]);
            for (int tt = 0; tt < taps; tt++) {
                int kh = (tap0 + tt) / g.k, kw = (tap0 + tt) % g.k;
                int ih = oh * g.stride + kh - g.pad_top, iw = ow * g.stride + kw - g.pad_left;
                if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
                acc[tt] += d * S::load(x[(((size_t)n * g.h + ih) * g.w + iw) * C + c]);
            }
        }
    }
    __shared__ float part[RED_Y][RED_X];
    for (int tt = 0; tt < taps; tt++) {
        part[threadIdx.y][threadIdx.x] = acc[tt];
        __syncthreads();
        if (threadIdx.y == 0 && c < C) {
            float s = 0.0f;
            for (int r = 0; r < RED_Y; r++)
                s += part[r][threadIdx.x];
            partials[((size_t)blockIdx.y * kk + tap0 + tt) * C + c] = s;
        }
        __syncthreads();
    }
}

/* ---- depthwise, register-blocked (the default; MT_CUDA_DEPTHWISE_KERNEL=legacy runs the
 * one-output-per-thread kernels above) ----
 * A thread owns DW_TW consecutive positions along W of one row (n, h) and V channels (V = 4: one
 * float4, when C % 4 == 0 and the pointers are 16-byte aligned), with the DW_TW x V sums in
 * registers: the index arithmetic (64-bit) happens once per thread instead of once per output,
 * each weight vector is loaded once per tap for the whole strip, and loads are float4. Consecutive
 * threads take consecutive channel groups, so a warp reads whole 16-byte-aligned pixel segments.
 * SD: the stride when 1 or 2 (the tap-to-output mapping of the backward then has no division),
 * else 0 (read from the geometry). x, y, dy, dx in storage S, w float. */
const int DW_TW = 4;

/* y: N,Ho,Wo,C from x: N,H,W,C and w: [k][k][C] */
template <class S, int V>
__global__ void depthwise_forward_strip_kernel(mt_cuda_conv_geom g, const typename S::elem *x,
                                               const float *w, typename S::elem *y) {
    const int C = g.cin, groups = C / V, strips = (g.wo + DW_TW - 1) / DW_TW;
    const size_t count = (size_t)g.n * g.ho * strips * groups;
    GRID_STRIDE(i, count) {
        const int c0 = (int)(i % groups) * V;
        size_t t = i / groups;
        const int ow0 = (int)(t % strips) * DW_TW;
        t /= strips;
        const int oh = (int)(t % g.ho), n = (int)(t / g.ho);
        float acc[DW_TW][V], xv[V], wv[V];
        for (int s = 0; s < DW_TW; s++)
            for (int v = 0; v < V; v++)
                acc[s][v] = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            const int ih = oh * g.stride + kh - g.pad_top;
            if (ih < 0 || ih >= g.h) continue;
            const typename S::elem *row = x + ((size_t)n * g.h + ih) * g.w * C + c0;
            for (int kw = 0; kw < g.k; kw++) {
                fvec_io<V>::load(w + (size_t)(kh * g.k + kw) * C + c0, wv);
                for (int s = 0; s < DW_TW; s++) {
                    const int iw = (ow0 + s) * g.stride + kw - g.pad_left;
                    if (ow0 + s >= g.wo || iw < 0 || iw >= g.w) continue;
                    vec_io<S, V>::load(row + (size_t)iw * C, xv);
                    for (int v = 0; v < V; v++)
                        acc[s][v] = fmaf(xv[v], wv[v], acc[s][v]);
                }
            }
        }
        typename S::elem *out = y + (((size_t)n * g.ho + oh) * g.wo + ow0) * C + c0;
        for (int s = 0; s < DW_TW && ow0 + s < g.wo; s++)
            vec_io<S, V>::store(out + (size_t)s * C, acc[s]);
    }
}

/* The output position that tap kk maps input position i to, or -1; S > 0: the stride known at
 * compile time. */
template <int SD> __device__ int strip_output_index(int i, int pad, int kk, int stride, int size) {
    int t = i + pad - kk;
    if (SD == 1) return t >= 0 && t < size ? t : -1;
    if (SD == 2) return t >= 0 && !(t & 1) && (t >> 1) < size ? t >> 1 : -1;
    return output_index(i, pad, kk, stride, size);
}

/* dx: N,H,W,C from dy: N,Ho,Wo,C and w: [k][k][C] */
template <class S, int V, int SD>
__global__ void depthwise_backward_data_strip_kernel(mt_cuda_conv_geom g,
                                                     const typename S::elem *dy, const float *w,
                                                     typename S::elem *dx) {
    const int C = g.cin, groups = C / V, strips = (g.w + DW_TW - 1) / DW_TW;
    const size_t count = (size_t)g.n * g.h * strips * groups;
    GRID_STRIDE(i, count) {
        const int c0 = (int)(i % groups) * V;
        size_t t = i / groups;
        const int iw0 = (int)(t % strips) * DW_TW;
        t /= strips;
        const int ih = (int)(t % g.h), n = (int)(t / g.h);
        float acc[DW_TW][V], gv[V], wv[V];
        for (int s = 0; s < DW_TW; s++)
            for (int v = 0; v < V; v++)
                acc[s][v] = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            const int oh = strip_output_index<SD>(ih, g.pad_top, kh, g.stride, g.ho);
            if (oh < 0) continue;
            const typename S::elem *row = dy + ((size_t)n * g.ho + oh) * g.wo * C + c0;
            for (int kw = 0; kw < g.k; kw++) {
                fvec_io<V>::load(w + (size_t)(kh * g.k + kw) * C + c0, wv);
                for (int s = 0; s < DW_TW; s++) {
                    if (iw0 + s >= g.w) continue;
                    const int ow = strip_output_index<SD>(iw0 + s, g.pad_left, kw, g.stride, g.wo);
                    if (ow < 0) continue;
                    vec_io<S, V>::load(row + (size_t)ow * C, gv);
                    for (int v = 0; v < V; v++)
                        acc[s][v] = fmaf(gv[v], wv[v], acc[s][v]);
                }
            }
        }
        typename S::elem *out = dx + (((size_t)n * g.h + ih) * g.w + iw0) * C + c0;
        for (int s = 0; s < DW_TW && iw0 + s < g.w; s++)
            vec_io<S, V>::store(out + (size_t)s * C, acc[s]);
    }
}

/* Partial weight gradients of taps [tap0, tap0 + taps) over this block's slice of the N*Ho output
 * rows: block (lanes, rows) as for BN (threadIdx.x: a group of V channels, threadIdx.y: an output
 * row of the slice), grid (cols, parts). A thread walks whole output rows (one division per row,
 * none per position), with the taps x V sums in registers (the tap loops are unrolled to
 * MAX_TAPS so the compiler can keep them there). partials: [part][k*k][C]; the block's rows are
 * added in a fixed order, the parts then by mt_cuda_launch_sum_parts in double. */
template <class S, int V>
__global__ void
depthwise_backward_weights_rows_kernel(mt_cuda_conv_geom g, const typename S::elem *x,
                                       const typename S::elem *dy, int tap0, int taps,
                                       long rows_per_block, float *partials) {
    const int C = g.cin, kk = g.k * g.k;
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    const bool active = c0 < C;
    const long rows = (long)g.n * g.ho;
    const long begin = (long)blockIdx.y * rows_per_block;
    const long end = begin + rows_per_block < rows ? begin + rows_per_block : rows;
    float acc[MAX_TAPS][V], dv[V], xv[V];
    int tap_h[MAX_TAPS], tap_w[MAX_TAPS];
    MT_UNROLL
    for (int tt = 0; tt < MAX_TAPS; tt++) {
        tap_h[tt] = (tap0 + tt) / g.k - g.pad_top, tap_w[tt] = (tap0 + tt) % g.k - g.pad_left;
        for (int v = 0; v < V; v++)
            acc[tt][v] = 0.0f;
    }
    if (active) {
        for (long r = begin + threadIdx.y; r < end; r += blockDim.y) {
            const int oh = (int)(r % g.ho), n = (int)(r / g.ho);
            const typename S::elem *dyrow = dy + (size_t)r * g.wo * C + c0;
            const typename S::elem *image = x + (size_t)n * g.h * g.w * C + c0;
            for (int ow = 0; ow < g.wo; ow++) {
                vec_io<S, V>::load(dyrow + (size_t)ow * C, dv);
                MT_UNROLL
                for (int tt = 0; tt < MAX_TAPS; tt++) {
                    const int ih = oh * g.stride + tap_h[tt], iw = ow * g.stride + tap_w[tt];
                    if (tt >= taps || ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
                    vec_io<S, V>::load(image + ((size_t)ih * g.w + iw) * C, xv);
                    for (int v = 0; v < V; v++)
                        acc[tt][v] = fmaf(dv[v], xv[v], acc[tt][v]);
                }
            }
        }
    }
    __shared__ float part[BN_THREADS * BN_MAX_V];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    MT_UNROLL
    for (int tt = 0; tt < MAX_TAPS; tt++) {
        if (tt >= taps) break;
        for (int v = 0; v < V; v++)
            part[t * V + v] = acc[tt][v];
        __syncthreads();
        if (threadIdx.y == 0 && active)
            for (int v = 0; v < V; v++) {
                float s = 0.0f;
                for (unsigned y = 0; y < blockDim.y; y++)
                    s += part[(y * blockDim.x + threadIdx.x) * V + v];
                partials[((size_t)blockIdx.y * kk + tap0 + tt) * C + c0 + v] = s;
            }
        __syncthreads();
    }
}

} // namespace

extern "C" {

cudaError_t mt_cuda_launch_depthwise_forward(cudaStream_t stream, mt_cuda_storage storage,
                                             const mt_cuda_conv_geom *g, const void *x,
                                             const float *w, void *y) {
    const size_t count = (size_t)g->n * g->ho * g->wo * g->cin;
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        depthwise_forward_kernel<S>
            <<<grid_for(count), THREADS, 0, stream>>>(*g, as_elem<S>(x), w, as_elem<S>(y));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_depthwise_backward_data(cudaStream_t stream, mt_cuda_storage storage,
                                                   const mt_cuda_conv_geom *g, const void *dy,
                                                   const float *w, void *dx) {
    const size_t count = (size_t)g->n * g->h * g->w * g->cin;
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        depthwise_backward_data_kernel<S>
            <<<grid_for(count), THREADS, 0, stream>>>(*g, as_elem<S>(dy), w, as_elem<S>(dx));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_depthwise_backward_weights(cudaStream_t stream, mt_cuda_storage storage,
                                                      const mt_cuda_conv_geom *g, const void *x,
                                                      const void *dy, float *partials, float *dw) {
    const int kk = g->k * g->k;
    const int parts = mt_cuda_reduce_parts((long)g->n * g->ho * g->wo);
    const dim3 grid((unsigned)((g->cin + RED_X - 1) / RED_X), (unsigned)parts);
    cudaError_t e = with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        for (int tap0 = 0; tap0 < kk; tap0 += MAX_TAPS) {
            int taps = kk - tap0 < MAX_TAPS ? kk - tap0 : MAX_TAPS;
            depthwise_backward_weights_kernel<S><<<grid, dim3(RED_X, RED_Y), 0, stream>>>(
                *g, as_elem<S>(x), as_elem<S>(dy), tap0, taps, partials);
            cudaError_t le = cudaGetLastError();
            if (le != cudaSuccess) return le;
        }
        return cudaSuccess;
    });
    if (e != cudaSuccess) return e;
    return mt_cuda_launch_sum_parts(stream, partials, parts, (size_t)kk * g->cin, dw);
}

cudaError_t mt_cuda_launch_depthwise_forward_strip(cudaStream_t stream, mt_cuda_storage storage,
                                                   const mt_cuda_conv_geom *g, const void *x,
                                                   const float *w, void *y) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        const int vec =
            g->cin % 4 == 0 && vec_aligned<S>(x) && aligned16(w) && vec_aligned<S>(y) ? 4 : 1;
        const size_t count =
            (size_t)g->n * g->ho * ((g->wo + DW_TW - 1) / DW_TW) * (size_t)(g->cin / vec);
        auto kernel =
            vec == 4 ? depthwise_forward_strip_kernel<S, 4> : depthwise_forward_strip_kernel<S, 1>;
        kernel<<<grid_for(count), THREADS, 0, stream>>>(*g, as_elem<S>(x), w, as_elem<S>(y));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_depthwise_backward_data_strip(cudaStream_t stream,
                                                         mt_cuda_storage storage,
                                                         const mt_cuda_conv_geom *g, const void *dy,
                                                         const float *w, void *dx) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        const int vec =
            g->cin % 4 == 0 && vec_aligned<S>(dy) && aligned16(w) && vec_aligned<S>(dx) ? 4 : 1;
        const size_t count =
            (size_t)g->n * g->h * ((g->w + DW_TW - 1) / DW_TW) * (size_t)(g->cin / vec);
        auto kernel = depthwise_backward_data_strip_kernel<S, 1, 0>;
        if (vec == 4)
            kernel = g->stride == 1   ? depthwise_backward_data_strip_kernel<S, 4, 1>
                     : g->stride == 2 ? depthwise_backward_data_strip_kernel<S, 4, 2>
                                      : depthwise_backward_data_strip_kernel<S, 4, 0>;
        else
            kernel = g->stride == 1   ? depthwise_backward_data_strip_kernel<S, 1, 1>
                     : g->stride == 2 ? depthwise_backward_data_strip_kernel<S, 1, 2>
                                      : depthwise_backward_data_strip_kernel<S, 1, 0>;
        kernel<<<grid_for(count), THREADS, 0, stream>>>(*g, as_elem<S>(dy), w, as_elem<S>(dx));
        return cudaGetLastError();
    });
}

size_t mt_cuda_depthwise_weights_rows_partials(const mt_cuda_conv_geom *g) {
    const rows_plan a = rows_make_plan(g, g->cin, false), b = rows_make_plan(g, g->cin, true);
    const size_t parts = a.grid.y > b.grid.y ? a.grid.y : b.grid.y;
    return parts * g->k * g->k * g->cin;
}

cudaError_t mt_cuda_launch_depthwise_backward_weights_rows(cudaStream_t stream,
                                                           mt_cuda_storage storage,
                                                           const mt_cuda_conv_geom *g,
                                                           const void *x, const void *dy,
                                                           float *partials, float *dw) {
    const int kk = g->k * g->k;
    int parts = 1;
    cudaError_t e = with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        const rows_plan p = rows_make_plan(g, g->cin, vec_aligned<S>(x) && vec_aligned<S>(dy));
        parts = (int)p.grid.y;
        auto kernel = p.vec == 4 ? depthwise_backward_weights_rows_kernel<S, 4>
                                 : depthwise_backward_weights_rows_kernel<S, 1>;
        for (int tap0 = 0; tap0 < kk; tap0 += MAX_TAPS) {
            const int taps = kk - tap0 < MAX_TAPS ? kk - tap0 : MAX_TAPS;
            kernel<<<p.grid, p.block, 0, stream>>>(*g, as_elem<S>(x), as_elem<S>(dy), tap0, taps,
                                                   p.rows_per_block, partials);
            cudaError_t le = cudaGetLastError();
            if (le != cudaSuccess) return le;
        }
        return cudaSuccess;
    });
    if (e != cudaSuccess) return e;
    return mt_cuda_launch_sum_parts(stream, partials, parts, (size_t)kk * g->cin, dw);
}

} // extern "C"
